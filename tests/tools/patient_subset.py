"""Prints the image paths of a patient-complete subset of a labelled folder.

Usage: patient_subset.py DATA_DIR MOD

A patient is in the subset when the CRC-32 of its id is 0 modulo MOD, so
every image of a chosen patient is in (same-patient exclusion is exercised)
and the subset is the same on every run. MOD 1 lists the whole folder.
"""
import csv
import sys
import zlib

data, mod = sys.argv[1], int(sys.argv[2])
for r in csv.DictReader(open(f"{data}/labels.csv", newline="")):
    if zlib.crc32(r["patient_id"].encode()) % mod == 0:
        print(f"{data}/{r['image']}")
