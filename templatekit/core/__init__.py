"""The core: from a template's text to verified generation tags, one step per module, in one direction.

    syntax ─▶ analysis ─▶ truth / layout ─▶ plan (regions) ─▶ rewrite ─▶ verify      (pipeline runs them)

`tags` is the generation tag's one vocabulary, `markers` what a special token looks like, `probes` the
conversations every step reads, `sandbox` the bounded jinja2 environment every render runs in. The core imports
nothing of templatekit but `errors` (an import-linter contract in pyproject.toml checks it). This file imports
nothing, so that importing one core module does not load the others.
"""
