"""The C data plane: engines in this process on fake TAP ports and loopback UDP
(``overlay.testing.fakes``), the C/Python codec agreement, the standalone C
harnesses under AddressSanitizer/UndefinedBehaviorSanitizer, and the tests that
need a real TAP device (re-attach, hostile pods). The sanitizer tests build
their own copy of the module and run tests of this folder against it."""
