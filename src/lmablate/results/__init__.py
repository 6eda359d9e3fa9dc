"""Harvest: run tables, statistics, scaling fits, findings and the results page."""
