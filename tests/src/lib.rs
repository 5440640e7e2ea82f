//! Test harnesses shared by the end-to-end and interop tests: the virtual rack (network
//! namespaces, a bridge and taps) and QEMU servers watched over their serial console.
