"""templatekit's library of training-ready chat templates (the `*.jinja` files in this folder).

This folder is installed as the package `templatekit.library.templates` (see setup.py); read the templates with
`templatekit.get_template(name)` and `templatekit.list_templates()`.
"""
