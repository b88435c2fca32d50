"""The run tools around the model packages: the ``crocoman`` command (``main``), ``crocoman-data`` (``data``:
the synthetic world in ``synth/``, dataset converters in ``convert/``), the bench, the study and export."""
