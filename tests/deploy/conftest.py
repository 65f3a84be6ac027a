"""Tests that take the deployment docs' blocks (between <!-- begin:NAME -->
and <!-- end:NAME --> markers) and run them. Helpers live in
tests/support/deploy.py and tests/support/postfix.py."""
