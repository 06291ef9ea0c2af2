"""The package version (its own module, so that modules of the package never import the package's root)."""
__version__ = "0.1.0"
