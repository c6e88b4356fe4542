"""Optional accelerators (numba kernels), each behind a plain function that tests hold it equal to."""
