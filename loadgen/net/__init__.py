"""The only kernel I/O of a run: sockets, their options, batched send/receive, control messages
and the packet path. Everything else in loadgen is handed bytes and times by these modules.
"""
