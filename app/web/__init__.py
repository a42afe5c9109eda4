"""The Gradio web app: ``app`` composes the tabs, ``services`` holds models and sessions."""
