<#
.SYNOPSIS
Installs falcon-desktop on Windows into its own virtual environment, with the torch build that matches this
machine's NVIDIA driver (or the CPU build when there is none), and puts `falcon-desktop` on your PATH.

.DESCRIPTION
Needs no administrator rights. Re-running it upgrades in place; -Uninstall removes it again (runs are kept).
The torch build is chosen by Python (`python -m falcon_desktop.torch_build`, which reads nvidia-smi), so
falcon-desktop is installed first without dependencies, torch comes from the index it names, and then the rest.

.EXAMPLE
powershell -ExecutionPolicy Bypass -File install.ps1

.EXAMPLE
powershell -ExecutionPolicy Bypass -File install.ps1 -Cpu

.EXAMPLE
powershell -ExecutionPolicy Bypass -File install.ps1 -Uninstall
#>
[CmdletBinding()]
param(
    # Virtual environment to create or upgrade.
    [string]$Prefix = '',
    # Where the falcon-desktop.cmd launcher goes; it is added to your user PATH.
    [string]$BinDir = '',
    # Python 3.10-3.13 (64-bit) to build the environment from; default: the py launcher, then python.exe on PATH.
    [string]$Python = '',
    # What to install: a checkout directory, a wheel, or a pip requirement; default: this checkout, else PyPI.
    [string]$Source = '',
    # Install the CPU build of torch even when an NVIDIA driver is present.
    [switch]$Cpu,
    # Install torch from this package index instead of the one chosen for your driver.
    [string]$IndexUrl = '',
    # pip requirement for torch; without -IndexUrl or -Cpu it is resolved from pip's own configured indexes.
    [string]$TorchSpec = '',
    # Remove the environment, the launcher and the PATH entry; runs and caches are kept.
    [switch]$Uninstall
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$LauncherMarker = "rem written by falcon-desktop's install.ps1"
$SupportedVersions = @('3.12', '3.13', '3.11', '3.10')
$AppDir = Join-Path $env:LOCALAPPDATA 'falcon-desktop'
# Prints the interpreter's path when it is a 64-bit Python 3.10-3.13, else nothing. No double quotes inside:
# Windows PowerShell 5.1 mangles them in arguments to native programs.
$ProbeCode = "import struct, sys; ok = (3, 10) <= sys.version_info[:2] <= (3, 13) and struct.calcsize('P') == 8; print(sys.executable if ok else '')"

function Write-Step([string]$Message) { Write-Host "==> $Message" }

function Stop-Install([string]$Message, [string]$Hint = '') {
    $text = "Error: $Message"
    if ($Hint) { $text += "`nHint: $Hint" }
    throw $text
}

# Runs a program; a non-zero exit code stops the install. Its standard output becomes the caller's output, so a
# function that returns a value pipes the calls it only shows to Out-Host. Under 'Stop', Windows PowerShell 5.1
# turns any line a native program writes to stderr (pip's warnings) into a fatal error, hence 'Continue' here.
function Invoke-Program([string]$Program, [string[]]$Arguments) {
    $previous = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        & $Program @Arguments
        $code = $LASTEXITCODE
    } finally {
        $ErrorActionPreference = $previous
    }
    if ($code -ne 0) { Stop-Install "'$Program $($Arguments -join ' ')' failed with exit code $code." }
}

# The interpreter's full path, or '' when $Program is missing, unsupported, or the Microsoft Store's python.exe
# stub (which only prints where to get Python and exits 9009).
function Get-PythonPath([string]$Program, [string[]]$Selector) {
    if (-not (Get-Command $Program -ErrorAction SilentlyContinue)) { return '' }
    $previous = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        $found = & $Program @Selector -c $ProbeCode 2>$null | Select-Object -Last 1
        $code = $LASTEXITCODE
    } finally {
        $ErrorActionPreference = $previous
    }
    if ($code -eq 0 -and $found) { return [string]$found }
    return ''
}

function Find-Python {
    if ($Python) {
        $found = Get-PythonPath $Python @()
        if (-not $found) { Stop-Install "'$Python' is not a 64-bit Python 3.10-3.13." 'Pass another one with -Python.' }
        return $found
    }
    if (Get-Command py -ErrorAction SilentlyContinue) {
        foreach ($version in $SupportedVersions) {
            $found = Get-PythonPath 'py' @("-$version")
            if ($found) { return $found }
        }
    }
    foreach ($name in @('python', 'python3')) {
        if (Get-Command $name -ErrorAction SilentlyContinue) {
            $found = Get-PythonPath $name @()
            if ($found) { return $found }
        }
    }
    Stop-Install 'No 64-bit Python 3.10-3.13 found (tried the py launcher and python.exe on PATH).' `
        ('Install Python 3.12 (64-bit) from https://www.python.org/downloads/windows/ or run: ' +
         'winget install --id Python.Python.3.12 -e   then open a new terminal and run this installer again.')
}

function Test-OurVenv([string]$Dir) { return (Test-Path -LiteralPath (Join-Path $Dir 'pyvenv.cfg')) }

function New-OrUpgradeVenv([string]$Dir) {
    $venvPython = Join-Path $Dir 'Scripts\python.exe'
    if ((Test-OurVenv $Dir) -and (Get-PythonPath $venvPython @())) {
        Write-Step "Upgrading the environment in $Dir"
        return $venvPython
    }
    if ((Test-Path -LiteralPath $Dir) -and -not (Test-OurVenv $Dir) -and
        @(Get-ChildItem -LiteralPath $Dir -Force).Count -gt 0) {
        Stop-Install "'$Dir' exists and is not a virtual environment; refusing to touch it." `
            'Pass an empty or new directory with -Prefix.'
    }
    $basePython = Find-Python
    Write-Step "Creating a virtual environment in $Dir with $basePython"
    Invoke-Program $basePython @('-m', 'venv', '--clear', $Dir) | Out-Host
    return $venvPython
}

# What pip installs for falcon-desktop. A checkout is built into a wheel once, so the dependency-free
# install and the full install take the same build.
function Resolve-Package([string]$VenvPython, [string]$WorkDir) {
    $spec = $Source
    if (-not $spec -and $PSScriptRoot) {
        $checkout = Split-Path -Parent $PSScriptRoot
        $pyproject = Join-Path $checkout 'pyproject.toml'
        if ((Test-Path -LiteralPath $pyproject) -and
            (Select-String -LiteralPath $pyproject -Pattern '^name = "falcon-desktop"' -Quiet)) {
            $spec = $checkout
        }
    }
    if (-not $spec) { return 'falcon-desktop' }
    if (-not (Test-Path -LiteralPath $spec -PathType Container)) { return $spec }
    Write-Step "Building falcon-desktop from $spec"
    # setuptools builds in <checkout>\build and never removes modules deleted from the source, so a wheel built
    # there can carry stale files: build in the temporary directory instead.
    $buildConfig = Join-Path $WorkDir 'build.cfg'
    $utf8 = New-Object System.Text.UTF8Encoding $false
    [System.IO.File]::WriteAllText($buildConfig, "[build]`nbuild_base = $(Join-Path $WorkDir 'build')`n", $utf8)
    $env:DIST_EXTRA_CONFIG = $buildConfig
    try {
        Invoke-Program $VenvPython @('-m', 'pip', 'wheel', '--quiet', '--no-deps', '--wheel-dir', $WorkDir, $spec) | Out-Host
    } finally {
        Remove-Item Env:DIST_EXTRA_CONFIG
    }
    $wheel = Get-ChildItem -LiteralPath $WorkDir -Filter 'falcon_desktop-*.whl' | Select-Object -First 1
    if (-not $wheel) { Stop-Install "Building '$spec' produced no falcon-desktop wheel." }
    return $wheel.FullName
}

# The torch build for this machine, as falcon-desktop's chooser decides it (tag, index_url, reason).
function Get-TorchChoice([string]$VenvPython) {
    $chooserArgs = @('-m', 'falcon_desktop.torch_build', '--json')
    # No driver version means the CPU build, by the chooser's own rules.
    if ($Cpu) { $chooserArgs += @('--driver', 'none') }
    $json = Invoke-Program $VenvPython $chooserArgs
    return ($json | Out-String | ConvertFrom-Json)
}

# pip keeps an installed torch whose version sorts higher, so switching builds (CUDA -> CPU) needs it gone first.
function Remove-OtherTorchBuild([string]$VenvPython, [string]$Tag) {
    $code = "import importlib.metadata as m, importlib.util as u; print(m.version('torch') if u.find_spec('torch') else '')"
    $installed = [string](Invoke-Program $VenvPython @('-c', $code) | Select-Object -Last 1)
    if ($installed -like '*+*' -and $installed.Split('+')[1] -ne $Tag) {
        Write-Step "Replacing torch $installed with the $Tag build"
        Invoke-Program $VenvPython @('-m', 'pip', 'uninstall', '--yes', 'torch')
    }
}

function Install-Torch([string]$VenvPython) {
    $spec = 'torch'
    if ($TorchSpec) { $spec = $TorchSpec }
    if ($TorchSpec -and -not $IndexUrl -and -not $Cpu) {
        Write-Step "Installing $spec from pip's configured indexes (-TorchSpec)"
        Invoke-Program $VenvPython @('-m', 'pip', 'install', '--upgrade', $spec)
        return
    }
    $url = $IndexUrl
    if (-not $url) {
        $choice = Get-TorchChoice $VenvPython
        Write-Step "torch build: $($choice.tag) ($($choice.reason))"
        Remove-OtherTorchBuild $VenvPython $choice.tag
        $url = $choice.index_url
    }
    Write-Step "Installing $spec from $url"
    Invoke-Program $VenvPython @('-m', 'pip', 'install', '--upgrade', $spec, '--index-url', $url)
}

# cmd.exe reads a .cmd file in the console's OEM code page, not UTF-8: spell the user's folders as variables
# so the file stays ASCII whatever the user's name is.
function Format-CmdPath([string]$Path) {
    foreach ($name in @('LOCALAPPDATA', 'USERPROFILE')) {
        $root = [Environment]::GetEnvironmentVariable($name)
        if ($root -and $Path.StartsWith($root.TrimEnd('\') + '\', [System.StringComparison]::OrdinalIgnoreCase)) {
            return "%$name%" + $Path.Substring($root.TrimEnd('\').Length).Replace('%', '%%')
        }
    }
    return $Path.Replace('%', '%%')
}

# The launcher runs the environment's own falcon-desktop.exe: `python -m` would import a falcon_desktop folder
# from the current directory first.
function Write-Launcher([string]$Dir, [string]$VenvDir) {
    $launcher = Join-Path $Dir 'falcon-desktop.cmd'
    $program = Join-Path $VenvDir 'Scripts\falcon-desktop.exe'
    if ((Test-Path -LiteralPath $launcher) -and
        -not (Select-String -LiteralPath $launcher -SimpleMatch $LauncherMarker -Quiet)) {
        Stop-Install "'$launcher' exists and was not written by this installer; refusing to overwrite it." `
            'Remove it, or pass another directory with -BinDir.'
    }
    New-Item -ItemType Directory -Force -Path $Dir | Out-Null
    $text = "@echo off`r`n$LauncherMarker; remove with: install.ps1 -Uninstall`r`n" +
        "`"$(Format-CmdPath $program)`" %*`r`n"
    if ($text -match '[^\x00-\x7F]') {
        Stop-Install "cmd.exe cannot reliably read the non-ASCII path '$program' from a launcher." `
            'Pass a -Prefix under your user folder or one spelled in plain ASCII.'
    }
    [System.IO.File]::WriteAllText($launcher, $text, [System.Text.Encoding]::ASCII)
    Write-Step "Launcher: $launcher"
}

function Get-UserPathEntries {
    $key = [Microsoft.Win32.Registry]::CurrentUser.OpenSubKey('Environment')
    try {
        # Unexpanded, so entries such as %USERPROFILE%\bin survive the rewrite.
        $raw = [string]$key.GetValue('Path', '', [Microsoft.Win32.RegistryValueOptions]::DoNotExpandEnvironmentNames)
    } finally {
        $key.Close()
    }
    return @($raw.Split(';') | Where-Object { $_ })
}

function Set-UserPathEntries([string[]]$Entries) {
    $key = [Microsoft.Win32.Registry]::CurrentUser.OpenSubKey('Environment', $true)
    try {
        $key.SetValue('Path', ($Entries -join ';'), [Microsoft.Win32.RegistryValueKind]::ExpandString)
    } finally {
        $key.Close()
    }
    # Writing the registry directly tells no one; setting and clearing a variable through .NET broadcasts
    # WM_SETTINGCHANGE, so terminals opened from now on see the new PATH.
    [Environment]::SetEnvironmentVariable('FALCON_DESKTOP_PATH_REFRESH', '1', 'User')
    [Environment]::SetEnvironmentVariable('FALCON_DESKTOP_PATH_REFRESH', $null, 'User')
}

function Test-SamePath([string]$Entry, [string]$Dir) {
    return [Environment]::ExpandEnvironmentVariables($Entry).TrimEnd('\') -eq $Dir.TrimEnd('\')
}

function Add-ToUserPath([string]$Dir) {
    $entries = @(Get-UserPathEntries)
    if (@($entries | Where-Object { Test-SamePath $_ $Dir }).Count -eq 0) {
        Set-UserPathEntries ($entries + $Dir)
        Write-Step "Added $Dir to your user PATH (open a new terminal to use it)"
    }
    if (@($env:Path.Split(';') | Where-Object { $_ -and (Test-SamePath $_ $Dir) }).Count -eq 0) {
        $env:Path = "$env:Path;$Dir"
    }
}

function Remove-FromUserPath([string]$Dir) {
    $entries = @(Get-UserPathEntries)
    $kept = @($entries | Where-Object { -not (Test-SamePath $_ $Dir) })
    if ($kept.Count -ne $entries.Count) {
        Set-UserPathEntries $kept
        Write-Step "Removed $Dir from your user PATH"
    }
}

function Install-FalconDesktop([string]$VenvDir, [string]$LauncherDir) {
    $venvPython = New-OrUpgradeVenv $VenvDir
    Invoke-Program $venvPython @('-m', 'pip', 'install', '--quiet', '--upgrade', 'pip')
    $workDir = Join-Path ([System.IO.Path]::GetTempPath()) ('falcon-desktop-' + [System.Guid]::NewGuid().ToString('N'))
    New-Item -ItemType Directory -Path $workDir | Out-Null
    try {
        $package = Resolve-Package $venvPython $workDir
        Write-Step 'Installing falcon-desktop without its dependencies, to choose the torch build'
        Invoke-Program $venvPython @('-m', 'pip', 'install', '--quiet', '--upgrade', '--force-reinstall', '--no-deps', $package)
        Install-Torch $venvPython
        Write-Step 'Installing falcon-desktop and its other dependencies (bitsandbytes has native Windows wheels)'
        Invoke-Program $venvPython @('-m', 'pip', 'install', '--upgrade', $package)
    } finally {
        Remove-Item -LiteralPath $workDir -Recurse -Force -ErrorAction SilentlyContinue
    }
    Write-Launcher $LauncherDir $VenvDir
    Add-ToUserPath $LauncherDir
    Invoke-Program (Join-Path $VenvDir 'Scripts\falcon-desktop.exe') @('--version')
    $torchCheck = "import torch; print('torch', torch.__version__, '- CUDA available:', torch.cuda.is_available())"
    Invoke-Program $venvPython @('-c', $torchCheck)
    Write-Step 'Done. next (in a new terminal): falcon-desktop doctor'
}

function Uninstall-FalconDesktop([string]$VenvDir, [string]$LauncherDir) {
    $removed = $false
    if (Test-OurVenv $VenvDir) {
        Remove-Item -LiteralPath $VenvDir -Recurse -Force
        Write-Step "Removed $VenvDir"
        $removed = $true
    } elseif (Test-Path -LiteralPath $VenvDir) {
        Write-Warning "'$VenvDir' is not a virtual environment; left it alone."
    }
    $launcher = Join-Path $LauncherDir 'falcon-desktop.cmd'
    if ((Test-Path -LiteralPath $launcher) -and (Select-String -LiteralPath $launcher -SimpleMatch $LauncherMarker -Quiet)) {
        Remove-Item -LiteralPath $launcher -Force
        Write-Step "Removed $launcher"
        $removed = $true
    }
    Remove-FromUserPath $LauncherDir
    foreach ($dir in @($LauncherDir, (Split-Path -Parent $VenvDir))) {
        if ((Test-Path -LiteralPath $dir) -and @(Get-ChildItem -LiteralPath $dir -Force).Count -eq 0) {
            Remove-Item -LiteralPath $dir -Force
        }
    }
    if (-not $removed) { Write-Step "Nothing to remove: no environment at $VenvDir, no launcher at $launcher." }
    Write-Step "Your runs and caches in $AppDir were kept."
}

function Resolve-Dir([string]$Given, [string]$EnvValue, [string]$Default) {
    $dir = $Default
    if ($EnvValue) { $dir = $EnvValue }
    if ($Given) { $dir = $Given }
    # A trailing backslash before the closing quote would escape it on a native program's command line.
    return $ExecutionContext.SessionState.Path.GetUnresolvedProviderPathFromPSPath($dir).TrimEnd('\')
}

try {
    if ($Cpu -and $IndexUrl) { Stop-Install '-Cpu and -IndexUrl both choose torch''s index.' 'Pass one of them.' }
    $venvDir = Resolve-Dir $Prefix $env:FALCON_DESKTOP_VENV (Join-Path $AppDir 'venv')
    $launcherDir = Resolve-Dir $BinDir $env:FALCON_DESKTOP_BIN (Join-Path $AppDir 'bin')
    if ($Uninstall) { Uninstall-FalconDesktop $venvDir $launcherDir } else { Install-FalconDesktop $venvDir $launcherDir }
} catch {
    $message = $_.Exception.Message
    if (-not $message.StartsWith('Error:')) { $message = "Error: $message" }
    [Console]::Error.WriteLine($message)
    exit 1
}
