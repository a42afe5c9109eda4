"""The web app's tabs, one module each (in the order the page shows them): ``generate``,
``control``, ``swap``, ``anonymize``, ``dataset``, ``train``, ``models``.

Each has ``render(...)``, which lays out the tab and returns its components as a small
frozen record, and ``wire(tab, ctx)``, which connects the tab's events to its handlers
(the handlers themselves live one level up, in ``generate``, ``edit``, ``dataset`` and
``train``). ``common`` holds what they share. These modules import Gradio at the top:
:func:`facegen.app.web.app.build_app` imports them when it builds the page.
"""
