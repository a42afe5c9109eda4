"""facegen.app: the ``facegen`` command line and the Gradio web app."""
