@echo off
rem Double-click this file to install (or upgrade) falcon-desktop; "install.cmd -Uninstall" removes it.
rem It runs install.ps1 next to it with Windows PowerShell, which every Windows 10 and 11 has.
setlocal
powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%~dp0install.ps1" %*
set "INSTALL_EXIT_CODE=%ERRORLEVEL%"
echo.
pause
exit /b %INSTALL_EXIT_CODE%
