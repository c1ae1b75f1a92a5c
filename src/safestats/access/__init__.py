"""Access control: the policy of users, groups, organisations and grants."""
