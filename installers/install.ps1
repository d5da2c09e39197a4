<#
.SYNOPSIS
Installs falcon-desktop on Windows into its own virtual environment, with the torch build that matches this
machine's NVIDIA driver (or the CPU build when there is none), and puts `falcon-desktop` on your PATH.

.DESCRIPTION
Needs no administrator rights. Re-running it upgrades in place; -Uninstall removes it again (runs are kept).
Run it from the folder you got with `git clone` or from the repository's zip, unpacked: it installs that copy.
Every decision lives in Python (falcon_desktop\install_plan.py, unit-tested): which interpreter, the pre-flight
checks (Python, long paths, disk, the driver against the GPU, running falcon-desktop processes), the torch build
and the pip steps. Torch is switched only after its download succeeded, so a failure leaves the torch you had.

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
    # Where the falcon-desktop.exe launcher goes; it is added to your user PATH.
    [string]$BinDir = '',
    # 64-bit Python 3.10-3.14 to build the environment from; default: the py launcher, then python.exe on PATH.
    [string]$Python = '',
    # What to install: a falcon-desktop checkout folder or wheel; default: the checkout this script sits in.
    [string]$Source = '',
    # Install the CPU build of torch even when an NVIDIA driver is present.
    [switch]$Cpu,
    # Install torch from this package index (a mirror) instead of the one chosen for your driver.
    [string]$IndexUrl = '',
    # pip requirement for torch, or the path of a downloaded torch wheel.
    [string]$TorchSpec = '',
    # Remove the environment, the launcher and the PATH entry; runs and caches are kept.
    [switch]$Uninstall
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$LauncherMarker = 'falcon-desktop.installed-by-install.ps1'
$PyLauncherVersions = @('3.12', '3.13', '3.14', '3.11', '3.10')
$AppDir = Join-Path $env:LOCALAPPDATA 'falcon-desktop'

function Write-Step([string]$Message) { Write-Host "==> $Message" }

function Stop-Install([string]$Message, [string]$Hint = '') {
    $text = "Error: $Message"
    if ($Hint) { $text += "`nHint: $Hint" }
    throw $text
}

# One argument as the C runtime parses a Windows command line: quoted when it holds a space, backslashes before a
# quote doubled.
function Format-Argument([string]$Argument) {
    if ($Argument -and $Argument -notmatch '[\s"]') { return $Argument }
    $escaped = $Argument -replace '(\\*)"', '$1$1\"' -replace '(\\+)$', '$1$1'
    return '"' + $escaped + '"'
}

# Runs a program on this console, not through PowerShell's pipeline: pip draws its live progress bar, and no
# output is decoded with the console's code page. Returns the exit code.
function Invoke-Native([string]$Program, [string[]]$Arguments) {
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = $Program
    $info.Arguments = (@($Arguments | ForEach-Object { Format-Argument $_ }) -join ' ')
    $info.UseShellExecute = $false
    $process = [System.Diagnostics.Process]::Start($info)
    $process.WaitForExit()
    return $process.ExitCode
}

# falcon_desktop.install_plan, loaded from the checkout (or wheel) before falcon-desktop is installed.
function Invoke-Plan([string]$Program, [string[]]$Selector, [string[]]$Arguments) {
    $env:PYTHONPATH = $script:SourcePath
    try {
        return (Invoke-Native $Program ($Selector + @('-X', 'utf8', '-m', 'falcon_desktop.install_plan') + $Arguments))
    } finally {
        Remove-Item Env:PYTHONPATH -ErrorAction SilentlyContinue
    }
}

function Read-Utf8([string]$Path) { return [System.IO.File]::ReadAllText($Path, [System.Text.Encoding]::UTF8) }

function Write-Utf8([string]$Path, [string]$Text) {
    [System.IO.File]::WriteAllText($Path, $Text, (New-Object System.Text.UTF8Encoding $false))
}

function Resolve-Source {
    $spec = $Source
    if (-not $spec -and $PSScriptRoot) {
        $checkout = Split-Path -Parent $PSScriptRoot
        $pyproject = Join-Path $checkout 'pyproject.toml'
        if ((Test-Path -LiteralPath $pyproject) -and
            (Select-String -LiteralPath $pyproject -Pattern '^name = "falcon-desktop"' -Quiet)) {
            $spec = $checkout
        }
    }
    if (-not $spec) {
        Stop-Install 'This script is not inside a falcon-desktop folder, and no -Source was given.' `
            ('Get the files first: git clone the repository, or download its zip (Code > Download ZIP) and ' +
             'unpack it; then run installers\install.cmd from that folder.')
    }
    if (-not (Test-Path -LiteralPath $spec)) { Stop-Install "-Source '$spec' is neither a checkout nor a wheel." }
    return (Resolve-Path -LiteralPath $spec).ProviderPath
}

# The first interpreter install_plan accepts; its own sys.executable comes back through a UTF-8 file.
function Find-Python([string]$WorkDir) {
    $answer = Join-Path $WorkDir 'python.txt'
    $candidates = @()
    if ($Python) {
        $candidates += , @($Python, @())
    } else {
        if (Get-Command py -ErrorAction SilentlyContinue) {
            foreach ($version in $PyLauncherVersions) { $candidates += , @('py', @("-$version")) }
        }
        foreach ($name in @('python', 'python3')) { $candidates += , @($name, @()) }
    }
    foreach ($candidate in $candidates) {
        $command = Get-Command $candidate[0] -ErrorAction SilentlyContinue
        if (-not $command) { continue }
        if ((Invoke-Plan $command.Source $candidate[1] @('check-python', '--out', $answer)) -eq 0) {
            return (Read-Utf8 $answer)
        }
    }
    if ($Python) { Stop-Install "'$Python' cannot build the environment (see above)." 'Pass another one with -Python.' }
    Stop-Install 'No 64-bit Python 3.10-3.14 found (tried the py launcher and python.exe on PATH; the Microsoft Store Python is not used).' `
        ('Install Python 3.12 (64-bit) from https://www.python.org/downloads/windows/ or run: ' +
         'winget install --id Python.Python.3.12 -e   then open a new terminal and run this installer again.')
}

# Open programs keep their files locked (WinError 32): find falcon-desktop processes run from this installation.
function Get-RunningInstall([string]$VenvDir, [string]$LauncherDir) {
    $found = @()
    foreach ($process in @(Get-Process -ErrorAction SilentlyContinue)) {
        $path = $null
        try { $path = $process.Path } catch { continue }
        if ($path -and ($path.StartsWith($VenvDir + '\', [System.StringComparison]::OrdinalIgnoreCase) -or
                        $path.StartsWith($LauncherDir + '\', [System.StringComparison]::OrdinalIgnoreCase))) {
            $found += @('--running', "$($process.ProcessName) (pid $($process.Id))")
        }
    }
    return $found
}

function Test-OurVenv([string]$Dir) { return (Test-Path -LiteralPath (Join-Path $Dir 'pyvenv.cfg')) }

function New-OrUpgradeVenv([string]$Dir, [string]$BasePython) {
    $venvPython = Join-Path $Dir 'Scripts\python.exe'
    if ((Test-OurVenv $Dir) -and (Test-Path -LiteralPath $venvPython)) {
        Write-Step "Upgrading the environment in $Dir"
        return $venvPython
    }
    if ((Test-Path -LiteralPath $Dir) -and @(Get-ChildItem -LiteralPath $Dir -Force).Count -gt 0) {
        Stop-Install "'$Dir' exists and is not a virtual environment; refusing to touch it." `
            'Pass an empty or new directory with -Prefix.'
    }
    Write-Step "Creating a virtual environment in $Dir with $BasePython"
    if ((Invoke-Native $BasePython @('-m', 'venv', '--clear', $Dir)) -ne 0) {
        Stop-Install "Creating the virtual environment in '$Dir' failed (see above)."
    }
    return $venvPython
}

# The launcher is a copy of pip's own falcon-desktop.exe, which runs the environment's python.exe by its full path:
# no .cmd wrapper, so Ctrl-C (which `train` answers by saving) never meets cmd's "Terminate batch job (Y/N)?".
function Write-Launcher([string]$Dir, [string]$VenvDir) {
    $launcher = Join-Path $Dir 'falcon-desktop.exe'
    $marker = Join-Path $Dir $LauncherMarker
    if ((Test-Path -LiteralPath $launcher) -and -not (Test-Path -LiteralPath $marker)) {
        Stop-Install "'$launcher' exists and was not written by this installer; refusing to overwrite it." `
            'Remove it, or pass another directory with -BinDir.'
    }
    New-Item -ItemType Directory -Force -Path $Dir | Out-Null
    Copy-Item -LiteralPath (Join-Path $VenvDir 'Scripts\falcon-desktop.exe') -Destination $launcher -Force
    Write-Utf8 $marker "falcon-desktop.exe here runs $VenvDir; remove both with: install.ps1 -Uninstall`r`n"
    # Earlier versions of this installer wrote a .cmd launcher; it would shadow nothing, but it is stale.
    $oldLauncher = Join-Path $Dir 'falcon-desktop.cmd'
    if ((Test-Path -LiteralPath $oldLauncher) -and
        (Select-String -LiteralPath $oldLauncher -SimpleMatch "written by falcon-desktop's install.ps1" -Quiet)) {
        Remove-Item -LiteralPath $oldLauncher -Force
    }
    Write-Step "Launcher: $launcher"
    return $launcher
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
    $script:SourcePath = Resolve-Source
    $workDir = Join-Path ([System.IO.Path]::GetTempPath()) ('falcon-desktop-' + [System.Guid]::NewGuid().ToString('N'))
    New-Item -ItemType Directory -Path $workDir | Out-Null
    try {
        $basePython = Find-Python $workDir
        $options = Join-Path $workDir 'options.json'
        $fields = [ordered]@{ prefix = $VenvDir; source = $script:SourcePath; work_dir = $workDir; cpu = [bool]$Cpu;
                              index_url = $IndexUrl; torch_spec = $TorchSpec; shell = 'powershell' }
        Write-Utf8 $options (New-Object PSObject -Property $fields | ConvertTo-Json)
        $running = @(Get-RunningInstall $VenvDir $LauncherDir)
        if ((Invoke-Plan $basePython @() (@('preflight', '--options', $options) + $running)) -ne 0) { exit 1 }
        $venvPython = New-OrUpgradeVenv $VenvDir $basePython
        if ((Invoke-Plan $venvPython @() @('install', '--options', $options)) -ne 0) { exit 1 }
    } finally {
        Remove-Item -LiteralPath $workDir -Recurse -Force -ErrorAction SilentlyContinue
    }
    $launcher = Write-Launcher $LauncherDir $VenvDir
    Add-ToUserPath $LauncherDir
    Write-Step 'Installed. Checking the machine with `falcon-desktop doctor`:'
    # doctor exits 1 when something FAILs (no GPU, for one): its verdict is the news, the install itself succeeded.
    $null = Invoke-Native $launcher @('doctor')
    Write-Step 'Done. Next, in a new terminal: falcon-desktop demo   (docs\getting-started.md goes on from there)'
}

function Uninstall-FalconDesktop([string]$VenvDir, [string]$LauncherDir) {
    $removed = $false
    $running = @(Get-RunningInstall $VenvDir $LauncherDir)
    if ($running.Count -gt 0) {
        Stop-Install "falcon-desktop is running ($(($running | Where-Object { $_ -ne '--running' }) -join ', ')); its files are locked." `
            'Close every falcon-desktop window, then run -Uninstall again.'
    }
    if (Test-OurVenv $VenvDir) {
        Remove-Item -LiteralPath $VenvDir -Recurse -Force
        Write-Step "Removed $VenvDir"
        $removed = $true
    } elseif (Test-Path -LiteralPath $VenvDir) {
        Write-Warning "'$VenvDir' is not a virtual environment; left it alone."
    }
    $launcher = Join-Path $LauncherDir 'falcon-desktop.exe'
    $marker = Join-Path $LauncherDir $LauncherMarker
    if (Test-Path -LiteralPath $marker) {
        Remove-Item -LiteralPath $launcher -Force -ErrorAction SilentlyContinue
        Remove-Item -LiteralPath $marker -Force
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
