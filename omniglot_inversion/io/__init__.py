"""Files and data: atomic writes, JSON and folder locks (`files`), training checkpoints
(`checkpoints`), Omniglot through tfds online or from a folder of archives (`data`), and a
user's own images from folders, ``.npz`` files or tfds (`image_sources`).

Imports only `omniglot_inversion.errors` and `omniglot_inversion.interrupts` from the package: every
other room may read and write through it.
"""
