"""Training-time code: trained spans for any conversation (generation tags, or the delimiter fallback), loss
policies, token masks and dataset preparation. Built on `templatekit.core`; imports nothing above it.
"""
