"""shoplake: behaviour logs and item catalogues in; trustworthy recommendation and marketing features out."""

__version__ = "0.1.0"
