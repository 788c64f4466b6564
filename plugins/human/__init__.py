"""The ``human`` plugin: human feedback at the terminal, TAMER-style keypresses, ratings and A/B comparisons.

``source`` (the ``human`` reward source), ``store`` (SQLite, every label committed as it is given),
``credit`` (keypress → token credit through the reaction-delay distribution), ``terminal`` and
``stream`` (keys and the token display), ``hhat`` (Ĥ, the model of the person's feedback), ``live``
(the state behind the ``human`` reward source), ``episodes`` and ``labelling`` (rating and A/B
modes), ``simulated`` (a scripted person on a pseudo-terminal), ``cli`` (``textenv feedback``).
"""
