"""Sphinx configuration: API reference from docstrings, Markdown pages through MyST."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "avggrad"
author = "The avggrad developers"
copyright = "2026, The avggrad developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
suppress_warnings = ["myst.header"]
napoleon_use_ivar = True
