"""cabruca: see README.md."""
