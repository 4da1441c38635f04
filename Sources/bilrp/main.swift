print("bilrp: the command-line interface is being built; see README")
