"""Built-in tools for tool-calling rollouts (``model.init_args.tools``), plain functions with type hints and a
docstring, as TRL's ``tools=`` takes them: ``r1_lightning.tools.calculator.add``, ..."""
