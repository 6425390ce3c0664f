"""`python -m crowdtk` runs the command-line interface (also under torchrun)."""

from crowdtk.cli import main

if __name__ == "__main__":
    main()
