"""timesheets"""
