# CPython's own manager tests (Lib/test/_test_multiprocessing.py, the classes named on the command
# line) run as clients of the Rust manager server: its ManagerMixin with the manager replaced by a
# SyncManager connected to the server. argv: address (a socket path or host:port), key in hex, then
# the test classes (such as _TestContainers), and '!test_x' for a test left out. Exits 0 when every
# test passed.
import sys
import unittest
from multiprocessing.managers import SyncManager

import test._test_multiprocessing as suite

addr, key = sys.argv[1], bytes.fromhex(sys.argv[2])
names = [a for a in sys.argv[3:] if not a.startswith('!')]
# '!test_name': a test left out (one that needs the server to run Python code).
left_out = {a[1:] for a in sys.argv[3:] if a.startswith('!')}
address = addr if addr.startswith('/') else (addr.rsplit(':', 1)[0], int(addr.rsplit(':', 1)[1]))
# A proxy unpickled from a reply (a proxy inside a list) authenticates with the process's own key,
# not its manager's (CPython's gh-78740): the suite's managers share the process's key, so this
# one does too.
import multiprocessing
multiprocessing.current_process().authkey = key


class RustManagerMixin(suite.ManagerMixin):
    @classmethod
    def setUpClass(cls):
        suite.BaseMixin.setUpClass.__func__(cls)
        cls.manager = SyncManager(address=address, authkey=key)
        cls.manager.connect()

    @classmethod
    def tearDownClass(cls):
        cls.manager = None
        suite.BaseMixin.tearDownClass.__func__(cls)


loader = unittest.TestLoader()
tests = unittest.TestSuite()
for name in names:
    base = getattr(suite, name)
    cls = type('WithRustManager' + name.lstrip('_'), (RustManagerMixin, base, unittest.TestCase), {})
    for t in loader.loadTestsFromTestCase(cls):
        if t._testMethodName not in left_out:
            tests.addTest(t)
result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(tests)
print('RAN', result.testsRun, 'FAILED', len(result.failures) + len(result.errors), 'SKIPPED', len(result.skipped), flush=True)
sys.exit(0 if result.wasSuccessful() else 1)
