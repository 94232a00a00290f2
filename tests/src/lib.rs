//! End-to-end tests of the redline suite: every test binary under `tests/` runs the services together
//! (through `redline-testkit`'s suite) or checks the deployment files against the binaries.
