"""The Gradio web app.

``app`` composes the page and serves it; ``tabs`` lays out each tab and wires its events;
``generate``, ``edit``, ``dataset`` and ``train`` are the handlers the tabs call;
``services`` holds the models, sessions and limits; ``trainers`` the LoRA trainer plumbing;
``files`` the uploads in and the labelled outputs out; ``layout`` the input and output groups
the Generate and Control tabs share.
"""
