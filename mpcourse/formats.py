"""placeholder: the formats helper writes this module."""
