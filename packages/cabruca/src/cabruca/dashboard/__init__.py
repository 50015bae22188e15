"""Trainyard monitoring dashboard (Streamlit): reads the run folders of every Trainyard package."""
