// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IQuantizedModelRegistry} from "./IQuantizedModelRegistry.sol";

/// @title QuantizedModelRegistry
/// @notice On-chain provenance of quantized model files: who vouches that a file (by SHA-256) is a given
/// quantization of a given source. See IQuantizedModelRegistry for the meaning of every call.
/// @dev Storage is packed so that a registration writes two record slots, one file-index slot and one
/// source-list slot; sources, revisions, quant types and tool versions are interned to small ids the first
/// time they are seen. Every lookup is an O(1) mapping read; everything that grows is paginated.
contract QuantizedModelRegistry is IQuantizedModelRegistry {
    /// @notice Role that grants and revokes roles.
    bytes32 public constant ADMIN_ROLE = keccak256("ADMIN_ROLE");
    /// @notice Role that may register (and revoke its own) records.
    bytes32 public constant ATTESTER_ROLE = keccak256("ATTESTER_ROLE");
    /// @notice Largest number of registrations in one `registerBatch`.
    uint256 public constant MAX_BATCH = 64;
    /// @notice Largest page of a paginated view.
    uint256 public constant MAX_PAGE = 100;

    /// @notice Flag bit: an importance matrix guided the quantization.
    uint16 public constant FLAG_IMATRIX = 1;
    /// @notice Flag bit: every tensor was quantized to the one type (llama.cpp `pure`).
    uint16 public constant FLAG_PURE = 2;
    /// @notice Flag bit: a LoRA adapter was merged into the weights before quantization.
    uint16 public constant FLAG_LORA_MERGED = 4;
    /// @notice Flag bit: the source was already quantized (llama.cpp `allow_requantize`).
    uint16 public constant FLAG_REQUANTIZED = 8;
    /// @notice Flag bit: the output tensor was left unquantized.
    uint16 public constant FLAG_OUTPUT_TENSOR_KEPT = 16;

    uint256 private constant _BASIS_POINTS = 10_000;
    uint64 private constant _MAX_SIZE = type(uint48).max;
    uint8 private constant _ADMIN_BIT = 1;
    uint8 private constant _ATTESTER_BIT = 2;

    /// @dev Two slots per (file, attester); the revocation time lives apart in `_revokedAt` because it is rare.
    /// Timestamps are uint32 seconds (good until 2106), sizes uint48 bytes (up to 256 TiB).
    struct StoredRecord {
        // slot 0
        bytes32 provenanceDigest;
        // slot 1
        uint48 originalSize;
        uint48 quantizedSize;
        uint32 sourceId;
        uint32 revisionId;
        uint32 attestedAt;
        uint16 quantTypeId;
        uint16 toolId;
        uint16 fileType;
        uint16 flags;
    }

    /// @dev One slot per file: its first attester inline, later ones in `_laterAttesters`.
    struct FileIndex {
        address firstAttester;
        uint32 attesterCount;
        uint32 validCount;
        uint32 firstSourceId;
    }

    /// @dev One slot per source digest.
    struct SourceIndex {
        uint32 id;
        uint32 fileCount;
    }

    /// @dev One slot per quant type: its id and the running aggregate over valid records.
    struct QuantTypeStats {
        uint16 id;
        uint32 validCount;
        uint208 sumBasisPoints;
    }

    /// @dev Id counters, one slot.
    struct Counters {
        uint32 sources;
        uint32 revisions;
        uint16 quantTypes;
        uint16 tools;
        uint32 admins;
    }

    mapping(bytes32 fileDigest => mapping(address attester => StoredRecord)) private _records;
    mapping(bytes32 fileDigest => mapping(address attester => uint32 revokedAt)) private _revokedAt;
    mapping(bytes32 fileDigest => FileIndex) private _files;
    mapping(bytes32 fileDigest => mapping(uint256 index => address attester)) private _laterAttesters;
    mapping(bytes32 fileDigest => mapping(uint32 sourceId => bool)) private _extraSourceListing;
    mapping(bytes32 sourceDigest => SourceIndex) private _sources;
    mapping(uint32 sourceId => bytes32 sourceDigest) private _sourceDigests;
    mapping(bytes20 revision => uint32 id) private _revisionIds;
    mapping(uint32 id => bytes20 revision) private _revisions;
    mapping(bytes32 sourceDigest => mapping(uint256 index => bytes32 fileDigest)) private _sourceFiles;
    mapping(bytes32 quantType => QuantTypeStats) private _quantTypes;
    mapping(uint16 id => bytes32 quantType) private _quantTypeLabels;
    mapping(bytes32 toolVersion => uint16 id) private _toolIds;
    mapping(uint16 id => bytes32 toolVersion) private _toolLabels;
    mapping(address account => uint8 roleBits) private _roles;
    Counters private _counters;

    /// @param admin receives both ADMIN_ROLE and ATTESTER_ROLE.
    constructor(address admin) {
        if (admin == address(0)) revert ZeroAddress();
        _roles[admin] = _ADMIN_BIT | _ATTESTER_BIT;
        _counters.admins = 1;
        emit RoleGranted(ADMIN_ROLE, admin, msg.sender);
        emit RoleGranted(ATTESTER_ROLE, admin, msg.sender);
    }

    // ------------------------------------------------------------------ writes

    /// @inheritdoc IQuantizedModelRegistry
    function register(Registration calldata registration) external {
        _requireRole(_ATTESTER_BIT, ATTESTER_ROLE);
        _register(registration);
    }

    /// @inheritdoc IQuantizedModelRegistry
    function registerBatch(Registration[] calldata registrations) external {
        uint256 count = registrations.length;
        if (count == 0 || count > MAX_BATCH) revert InvalidBatchSize(count, MAX_BATCH);
        _requireRole(_ATTESTER_BIT, ATTESTER_ROLE);
        for (uint256 i = 0; i < count; ++i) {
            _register(registrations[i]);
        }
    }

    /// @inheritdoc IQuantizedModelRegistry
    function revoke(bytes32 fileDigest, string calldata reason) external {
        StoredRecord storage record = _records[fileDigest][msg.sender];
        if (record.attestedAt == 0) revert RecordNotFound(fileDigest, msg.sender);
        if (_revokedAt[fileDigest][msg.sender] != 0) revert AlreadyRevoked(fileDigest, msg.sender);
        _revokedAt[fileDigest][msg.sender] = uint32(block.timestamp);
        _files[fileDigest].validCount -= 1;
        QuantTypeStats storage stats = _quantTypes[_quantTypeLabels[record.quantTypeId]];
        stats.validCount -= 1;
        stats.sumBasisPoints -= uint208(_basisPoints(record.originalSize, record.quantizedSize));
        emit Revoked(fileDigest, msg.sender, reason);
    }

    /// @inheritdoc IQuantizedModelRegistry
    function grantRole(bytes32 role, address account) external {
        _requireRole(_ADMIN_BIT, ADMIN_ROLE);
        if (account == address(0)) revert ZeroAddress();
        uint8 bit = _roleBit(role);
        uint8 bits = _roles[account];
        if (bits & bit != 0) return;
        _roles[account] = bits | bit;
        if (bit == _ADMIN_BIT) _counters.admins += 1;
        emit RoleGranted(role, account, msg.sender);
    }

    /// @inheritdoc IQuantizedModelRegistry
    function revokeRole(bytes32 role, address account) external {
        _requireRole(_ADMIN_BIT, ADMIN_ROLE);
        uint8 bit = _roleBit(role);
        uint8 bits = _roles[account];
        if (bits & bit == 0) return;
        if (bit == _ADMIN_BIT) {
            if (_counters.admins == 1) revert LastAdmin(account);
            _counters.admins -= 1;
        }
        _roles[account] = bits & ~bit;
        emit RoleRevoked(role, account, msg.sender);
    }

    // ------------------------------------------------------------------ views

    /// @inheritdoc IQuantizedModelRegistry
    function verify(bytes32 fileDigest, address attester) external view returns (Status status) {
        StoredRecord storage record = _records[fileDigest][attester];
        if (record.attestedAt == 0) return Status.Unknown;
        return _revokedAt[fileDigest][attester] == 0 ? Status.Valid : Status.Revoked;
    }

    /// @inheritdoc IQuantizedModelRegistry
    function getRecord(bytes32 fileDigest, address attester) external view returns (Record memory record) {
        if (_records[fileDigest][attester].attestedAt == 0) revert RecordNotFound(fileDigest, attester);
        return _toRecord(fileDigest, attester);
    }

    /// @inheritdoc IQuantizedModelRegistry
    function validRecordsOf(bytes32 fileDigest) external view returns (Record[] memory records) {
        FileIndex memory file = _files[fileDigest];
        records = new Record[](file.validCount);
        uint256 found = 0;
        for (uint256 i = 0; i < file.attesterCount && found < file.validCount; ++i) {
            address attester = _attesterAt(fileDigest, file, i);
            if (_revokedAt[fileDigest][attester] == 0) {
                records[found] = _toRecord(fileDigest, attester);
                ++found;
            }
        }
    }

    /// @inheritdoc IQuantizedModelRegistry
    function attestersOf(bytes32 fileDigest, uint256 offset, uint256 limit)
        external
        view
        returns (address[] memory attesters, uint256 total)
    {
        FileIndex memory file = _files[fileDigest];
        total = file.attesterCount;
        uint256 size = _pageSize(offset, limit, total);
        attesters = new address[](size);
        for (uint256 i = 0; i < size; ++i) {
            attesters[i] = _attesterAt(fileDigest, file, offset + i);
        }
    }

    /// @inheritdoc IQuantizedModelRegistry
    function filesBySource(bytes32 sourceDigest, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory files, uint256 total)
    {
        total = _sources[sourceDigest].fileCount;
        uint256 size = _pageSize(offset, limit, total);
        files = new bytes32[](size);
        for (uint256 i = 0; i < size; ++i) {
            files[i] = _sourceFiles[sourceDigest][offset + i];
        }
    }

    /// @inheritdoc IQuantizedModelRegistry
    function compressionRatio(bytes32 fileDigest, address attester) external view returns (uint256 basisPoints) {
        StoredRecord storage record = _records[fileDigest][attester];
        if (record.attestedAt == 0) revert RecordNotFound(fileDigest, attester);
        return _basisPoints(record.originalSize, record.quantizedSize);
    }

    /// @inheritdoc IQuantizedModelRegistry
    function getCompressionRatio(bytes32 quantType) external view returns (uint256 basisPoints, uint256 records) {
        QuantTypeStats memory stats = _quantTypes[quantType];
        if (stats.validCount == 0) return (0, 0);
        return (stats.sumBasisPoints / stats.validCount, stats.validCount);
    }

    /// @inheritdoc IQuantizedModelRegistry
    function attestationCount(bytes32 fileDigest) external view returns (uint256 count) {
        return _files[fileDigest].validCount;
    }

    /// @inheritdoc IQuantizedModelRegistry
    function hasRole(bytes32 role, address account) external view returns (bool) {
        if (role == ADMIN_ROLE) return _roles[account] & _ADMIN_BIT != 0;
        if (role == ATTESTER_ROLE) return _roles[account] & _ATTESTER_BIT != 0;
        return false;
    }

    /// @inheritdoc IQuantizedModelRegistry
    function version() external pure returns (string memory) {
        return "1.0.0";
    }

    // ------------------------------------------------------------------ internals

    function _register(Registration calldata r) private {
        if (r.fileDigest == bytes32(0)) revert ZeroDigest("fileDigest");
        if (r.sourceDigest == bytes32(0)) revert ZeroDigest("sourceDigest");
        if (r.provenanceDigest == bytes32(0)) revert ZeroDigest("provenanceDigest");
        if (r.quantType == bytes32(0)) revert EmptyLabel("quantType");
        if (r.toolVersion == bytes32(0)) revert EmptyLabel("toolVersion");
        if (r.originalSize == 0 || r.originalSize > _MAX_SIZE) revert InvalidSize("originalSize", r.originalSize);
        if (r.quantizedSize == 0 || r.quantizedSize > _MAX_SIZE) revert InvalidSize("quantizedSize", r.quantizedSize);
        if (r.quantizedSize > r.originalSize) revert QuantizedLargerThanOriginal(r.originalSize, r.quantizedSize);

        StoredRecord storage record = _records[r.fileDigest][msg.sender];
        if (record.attestedAt != 0) revert AlreadyRegistered(r.fileDigest, msg.sender);

        uint32 sourceId = _internSource(r.sourceDigest);
        uint256 basisPoints = _basisPoints(r.originalSize, r.quantizedSize);
        uint16 quantTypeId = _countQuantType(r.quantType, basisPoints);

        record.provenanceDigest = r.provenanceDigest;
        record.originalSize = uint48(r.originalSize);
        record.quantizedSize = uint48(r.quantizedSize);
        record.sourceId = sourceId;
        record.revisionId = _internRevision(r.sourceRevision);
        record.attestedAt = uint32(block.timestamp);
        record.quantTypeId = quantTypeId;
        record.toolId = _internTool(r.toolVersion);
        record.fileType = r.fileType;
        record.flags = r.flags;

        _indexFile(r.fileDigest, r.sourceDigest, sourceId);
        emit Registered(r.fileDigest, msg.sender, r.sourceDigest);
    }

    /// @dev Adds the caller to the file's attesters and the file to its source's list (once per source).
    function _indexFile(bytes32 fileDigest, bytes32 sourceDigest, uint32 sourceId) private {
        FileIndex memory file = _files[fileDigest];
        bool listed;
        if (file.attesterCount == 0) {
            file.firstAttester = msg.sender;
            file.firstSourceId = sourceId;
        } else {
            _laterAttesters[fileDigest][file.attesterCount] = msg.sender;
            listed = sourceId == file.firstSourceId || _extraSourceListing[fileDigest][sourceId];
            if (!listed) _extraSourceListing[fileDigest][sourceId] = true;
        }
        file.attesterCount += 1;
        file.validCount += 1;
        _files[fileDigest] = file;
        if (!listed) {
            SourceIndex storage source = _sources[sourceDigest];
            _sourceFiles[sourceDigest][source.fileCount] = fileDigest;
            source.fileCount += 1;
        }
    }

    function _internSource(bytes32 sourceDigest) private returns (uint32 id) {
        id = _sources[sourceDigest].id;
        if (id == 0) {
            id = ++_counters.sources;
            _sources[sourceDigest].id = id;
            _sourceDigests[id] = sourceDigest;
        }
    }

    /// @dev Interns the quant type label and adds one valid record to its aggregate.
    function _countQuantType(bytes32 quantType, uint256 basisPoints) private returns (uint16 id) {
        QuantTypeStats memory stats = _quantTypes[quantType];
        if (stats.id == 0) {
            _requireLabel(quantType, "quantType");
            stats.id = ++_counters.quantTypes;
            _quantTypeLabels[stats.id] = quantType;
        }
        stats.validCount += 1;
        stats.sumBasisPoints += uint208(basisPoints);
        _quantTypes[quantType] = stats;
        return stats.id;
    }

    /// @dev Revision ids start at 1; the zero revision (a source without one) is id 0 and costs nothing.
    function _internRevision(bytes20 revision) private returns (uint32 id) {
        if (revision == bytes20(0)) return 0;
        id = _revisionIds[revision];
        if (id == 0) {
            id = ++_counters.revisions;
            _revisionIds[revision] = id;
            _revisions[id] = revision;
        }
    }

    function _internTool(bytes32 toolVersion) private returns (uint16 id) {
        id = _toolIds[toolVersion];
        if (id == 0) {
            _requireLabel(toolVersion, "toolVersion");
            id = ++_counters.tools;
            _toolIds[toolVersion] = id;
            _toolLabels[id] = toolVersion;
        }
    }

    function _toRecord(bytes32 fileDigest, address attester) private view returns (Record memory) {
        StoredRecord memory stored = _records[fileDigest][attester];
        return Record({
            fileDigest: fileDigest,
            attester: attester,
            sourceDigest: _sourceDigests[stored.sourceId],
            sourceRevision: _revisions[stored.revisionId],
            provenanceDigest: stored.provenanceDigest,
            quantType: _labelString(_quantTypeLabels[stored.quantTypeId]),
            toolVersion: _labelString(_toolLabels[stored.toolId]),
            fileType: stored.fileType,
            flags: stored.flags,
            originalSize: stored.originalSize,
            quantizedSize: stored.quantizedSize,
            attestedAt: stored.attestedAt,
            revokedAt: _revokedAt[fileDigest][attester]
        });
    }

    function _attesterAt(bytes32 fileDigest, FileIndex memory file, uint256 index) private view returns (address) {
        return index == 0 ? file.firstAttester : _laterAttesters[fileDigest][index];
    }

    function _requireRole(uint8 bit, bytes32 role) private view {
        if (_roles[msg.sender] & bit == 0) revert MissingRole(role, msg.sender);
    }

    function _roleBit(bytes32 role) private pure returns (uint8) {
        if (role == ADMIN_ROLE) return _ADMIN_BIT;
        if (role == ATTESTER_ROLE) return _ATTESTER_BIT;
        revert UnknownRole(role);
    }

    function _pageSize(uint256 offset, uint256 limit, uint256 total) private pure returns (uint256) {
        if (limit == 0 || limit > MAX_PAGE) revert InvalidPageSize(limit, MAX_PAGE);
        if (offset >= total) return 0;
        uint256 remaining = total - offset;
        return remaining < limit ? remaining : limit;
    }

    function _basisPoints(uint256 originalSize, uint256 quantizedSize) private pure returns (uint256) {
        return (originalSize * _BASIS_POINTS) / quantizedSize;
    }

    /// @dev A label is left-aligned UTF-8: once a zero byte appears, every later byte must be zero.
    function _requireLabel(bytes32 label, string memory field) private pure {
        uint256 length = _labelLength(label);
        for (uint256 i = length; i < 32; ++i) {
            if (label[i] != 0) revert MalformedLabel(field, label);
        }
    }

    function _labelLength(bytes32 label) private pure returns (uint256 length) {
        while (length < 32 && label[length] != 0) ++length;
    }

    function _labelString(bytes32 label) private pure returns (string memory text) {
        uint256 length = _labelLength(label);
        bytes memory buffer = new bytes(length);
        for (uint256 i = 0; i < length; ++i) {
            buffer[i] = label[i];
        }
        return string(buffer);
    }
}
