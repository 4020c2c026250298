"""Training and test data: synthetic signals, folders of clean speech and noise mixed on the fly,
and scikit-learn's bundled digits. Nothing is downloaded."""
