"""``python -m conceptlib`` (also ``accelerate launch -m conceptlib ...``)."""

from conceptlib.cli import run

if __name__ == "__main__":
    run()
