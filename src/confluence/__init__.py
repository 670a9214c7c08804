"""SWOT Confluence on Snakemake: planning, reference modules, runner."""

__version__ = "0.1.0"
