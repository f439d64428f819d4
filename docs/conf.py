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

# Every reference to avggrad's own objects must resolve. References into other packages
# (JAX, Optax, Flax, NumPy, the standard library) would need their intersphinx inventories,
# which an offline build cannot fetch; those are left unlinked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|optax|flax|nnx|numpy|np|chex|orbax|argparse|typing|collections|"
               r"dataclasses|datetime|pathlib|os|io|types)(\..*)?"),
    (r"py:.*", r"(ArrayTree|Any|Callable|Optional|Sequence|Mapping|Union|Iterable|TextIO|NamedTuple|"
               r"Updates|Params|Key|Losses|Factory|PyTree|ArrayLike|Array|Device|Mesh|P|"
               r"PartitionSpec|NamedSharding|Dataset|RunResult|TrainConfig|Program|"
               r"DataParallel|Compiled|Coverage|Comparison|OptimizerSummary|LoopResult|"
               r"Checkpointer|ScalarOrSchedule|GradientTransformation|"
               r"GradientTransformationExtraArgs|OptState|MaskedNode|tuple|list|dict|int|"
               r"float|str|bool|None|callable|optional|function|Combine|ScaleByAutoState)"),
]
