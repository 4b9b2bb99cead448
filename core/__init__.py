"""Rosetta core: a pure-Python library (arrays in, arrays out) behind the Streamlit app.

No module here imports Streamlit. See the README's architecture section for the map.
"""
