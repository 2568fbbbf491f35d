-- One database per kvstore node: nodes sharing this server never see each other's rows.
CREATE DATABASE kv1;
CREATE DATABASE kv2;
CREATE DATABASE kv3;
