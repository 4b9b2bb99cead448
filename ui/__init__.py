"""Thin Streamlit drawing helpers shared by the pages (no computation)."""
