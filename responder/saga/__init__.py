"""Saga-style remediation: the action catalog (the only things Vigil can do), the policy that
decides auto, approval or dry run, and the check every proposed plan passes first."""
