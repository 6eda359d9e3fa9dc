"""Figures: every kind the harvest draws."""
