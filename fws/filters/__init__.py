"""The built-in filter modules, each named as ``-f NAME`` takes it.

==============================  =============================================
``broadcast_messages``          each message to every other client
``broadcast_messages_by_token`` ``token:NAME`` joins group NAME; messages go
                                to the other members of the sender's group
``broadcast_pubsub``            each pub/sub message to every client
``echo``                        each message back to its sender
``jwt_auth``                    only clients with a valid JWT upgrade (401
                                otherwise); needs ``--jwt-secret`` or
                                ``--jwt-key-file``
``publish_messages``            each message to the pub/sub channel ``global``
``stdout_messages``             prints each message
``stdout_pubsub``               prints each pub/sub message
``stdout_rawdata``              prints the raw bytes read from clients
==============================  =============================================
"""
