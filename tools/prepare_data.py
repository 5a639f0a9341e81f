"""`make data`: prepare the TinyStories splits in data/tiny/ (see shared/tinystories.py for the rules).

  make data                                  download the official files (about 1.9 GB, once) with pooch
  TINYSTORIES_DIR=/path/to/folder make data  use a local folder holding train.txt and valid.txt

Usage: python tools/prepare_data.py [--source DIR] [--out DIR] [--force]
The work is done by shared.tinystories.main, so `python -m shared.tinystories` does the same where
tools/ is absent (the student bundle).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared.tinystories import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
