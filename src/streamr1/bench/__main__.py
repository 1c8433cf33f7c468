"""``python -m streamr1.bench``: see :mod:`streamr1.bench.run`."""

from streamr1.bench.run import main

main()
