#!/bin/sh
# The example application: prints its version.
echo "kiln example app $(cat /opt/app/VERSION 2>/dev/null || echo unknown)"
