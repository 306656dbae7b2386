from mhd.ctl.main import entry

entry()
