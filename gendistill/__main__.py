"""``python -m gendistill ...`` (and ``accelerate launch -m gendistill distill dm``): the ``gendistill`` command."""

from .cli import main

main()
