"""`python -m llmctl` runs the same CLI as the `llmctl` console script."""

from llmctl.cli.main import run

if __name__ == "__main__":
    run()
