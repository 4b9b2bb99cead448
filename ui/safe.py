"""User text (captions, file, class and workspace names, messages that quote them) shown as text.

Streamlit renders markdown (and its own ``:color[…]`` / ``$…$`` directives) in ``st.markdown``,
``st.caption``, ``st.info``/``error``/…, widget labels, tab labels, image captions and ``help=``
tooltips; plotly renders a subset of HTML in hover text. :func:`plain` makes a string inert in all of
them: every ASCII punctuation character becomes a numeric character reference (``<`` → ``&#60;``),
which CommonMark and plotly both decode to the literal character and never read as syntax or a tag.
Use it on every user string passed to those calls; tables (``st.dataframe``), ``st.text``,
``st.code`` and select-box options show text as it is and need nothing.
"""
from __future__ import annotations

import string

_REFERENCES = {ord(c): f"&#{ord(c)};" for c in string.punctuation}


def plain(value: object) -> str:
    """``str(value)`` with every ASCII punctuation character written as ``&#NN;`` (shows as itself)."""
    return str(value).translate(_REFERENCES)
