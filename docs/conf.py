"""Sphinx configuration: the API reference is generated from the docstrings (autodoc,
Google-style sections through napoleon); the Markdown pages are read by MyST.
CI builds it with warnings as errors (``sphinx-build -W``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "jaxcompress"
author = "the jaxcompress developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("References", "notes_style"), ("Example", "examples_style")]
# ARCHITECTURE.md links to code paths and sections that are not pages of this site
suppress_warnings = ["myst.xref_missing", "myst.header"]
myst_heading_anchors = 3
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are documented once
