"""What the command line runs besides train: compare, the offline demo,
export / predict / evaluate."""
