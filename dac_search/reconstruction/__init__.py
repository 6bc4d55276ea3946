"""Data-free reconstruction of a plan's network by gradient steps on synthetic images (a stage after the
search, labelled as such wherever its results appear). ``settings`` is a leaf the plan format reads;
``engine`` fits, ``regions`` cuts the network, ``build`` caches and resumes."""
