"""Byte formats: the packet codecs, BPF programs, records and the messages between processes.

Pure: nothing here opens a socket, reads a clock or touches a file.
"""
