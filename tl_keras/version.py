"""The version of tl_keras (also the package metadata's, via setup.cfg)."""

__version__ = "0.2.0"
